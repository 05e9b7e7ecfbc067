"""ARS: adaptive rank sampling on top of PEFT AdaLoRA.

Every adapted weight W (d_out x d_in) gets an SVD-shaped update with r = init_r triplets:

      W + P . Lambda . Q          P = lora_B (d_out x r)   Lambda = lora_E (r x 1)   Q = lora_A (r x d_in)

      +----------+   +-----------------+   +-------------------+
      | p1 ... pr| x | diag(l1 .. lr)  | x | q1 (row)          |     triplet i = (p_i, l_i, q_i)
      |          |   |  * mask m_i     |   | ...               |     masked triplet: l_i := 0
      +----------+   +-----------------+   | qr                |
                                           +-------------------+

  Each allocation (every optimizer step in the decay phase):
      score_i = S(l_i) + mean_j S(P_ji) + mean_j S(Q_ij)      S = EMA|w*g| x EMA(uncertainty)
      rank all triplets of all layers by score, keep the top `budget` (cubic decay init -> target)

      kept    (top-budget) --p_drop-->   DROP   : l_i := 0 this step
      pruned  (the rest)   --p_regrow--> REGROW : left unmasked, the optimizer regrows l_i from its gradient
      pruned  otherwise                  PRUNE  : l_i := 0

      active = kept - dropped + regrown   (<= budget + regrown)
  The final allocation (step T - tfinal) is a deterministic top-target; then the pattern is frozen.
  Random draws come from a private generator seeded per trial: all data-parallel ranks agree.
"""

from lingo_core.tuners.ars.config import ARSConfig
from lingo_core.tuners.ars.model import RankController
from lingo_core.tuners.ars.sampler import RankSampler, copy_into, param_grad

__all__ = ["ARSConfig", "RankController", "RankSampler", "copy_into", "param_grad"]
