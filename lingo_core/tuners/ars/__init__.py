"""ARS: adaptive rank sampling on PEFT's SVD-form (AdaLoRA) adapters.

Every adapted weight W (d_out x d_in) gets r = init_r singular triplets (p_i, λ_i, q_i):

      W x + P · diag(Λ ⊙ g) · Q x        P = lora_B (d_out x r)   Λ = lora_E (r x 1)   Q = lora_A (r x d_in)

      g_i = scale when triplet i is active, 0 when it is not: a gate applied in the forward pass
      (layer.py); masking never overwrites P, Λ or Q.

  importance (every step until the final selection; importance.py)
      s_i = S(λ_i) + mean_j S(Q_ij) + mean_j S(P_ji),   S = EMA|w·∂L/∂w| × EMA(uncertainty)  (AdaLoRA)

  budget b(t): cubic decay from init_r to target_r per matrix over the pruning phase (schedule.py)
      kept          = top-b(t) triplets of all matrices by s, every deltaT steps
      reintroduced  ⊂ pruned, each with p_regrow = exploration      } drawn every resample period and
      dropped       ⊂ kept,   each with p_drop = exploration (n-b)/b } held for it: E[active] = b
      active        = (kept \\ dropped) ∪ reintroduced

  A reintroduced triplet resumes from its stored values, trains on task gradients and is scored from
  them while active; at the next draw it competes with the kept ones for the budget. A dropped one gets
  zero gradients, so its EMAs decay unless hold_dropped_importance holds them for the period. Exploration stops
  one resample period before the final selection, so the kept set trains alone first. The final selection
  (step T - tfinal) is the deterministic top-target; that pattern trains alone to the end and is what
  the exported adapter (a plain PEFT AdaLoRA adapter with rank_pattern) contains.

  "adalora" is the same machinery with exploration 0: PEFT's allocation and call order.
  Exploration draws come from a private generator seeded per trial: every data-parallel rank agrees.
"""

from lingo_core.tuners.ars.layer import GatedSVDLinear, OrthogonalityPenalty, gate_svd_layers
from lingo_core.tuners.ars.model import RankController
from lingo_core.tuners.ars.sampler import TripletSampler, select_top
from lingo_core.tuners.ars.schedule import RankSchedule, exploration_probabilities
from lingo_core.tuners.ars.shards import Shard, ShardAccess, WholeParams

__all__ = [
    "GatedSVDLinear",
    "OrthogonalityPenalty",
    "RankController",
    "RankSchedule",
    "Shard",
    "ShardAccess",
    "TripletSampler",
    "WholeParams",
    "exploration_probabilities",
    "gate_svd_layers",
    "select_top",
]
