"""Lottery tickets: iterative magnitude pruning (IMP) with weight, late and LR rewinding.

IMP (Frankle & Carbin, 2019, "The lottery ticket hypothesis") repeats: train, prune a
fraction `rate` of the remaining weights of each layer by magnitude (the output layer at
its own `output_rate`), rewind, train again. After round r a layer keeps
`round(n * (1 - rate) ** r)` of its `n` weights. Rewind modes:

- `"init"`: weights back to their initial values (Frankle & Carbin, 2019);
- `"step"`: weights and optimizer state back to optimizer step `rewind_step` (late
  rewinding, Frankle et al., 2020, "Linear mode connectivity and the lottery ticket
  hypothesis");
- `"lr"`: keep the trained weights, restart the optimizer and its learning-rate schedule
  from step 0 (learning-rate rewinding, Renda et al., 2020, "Comparing rewinding and
  fine-tuning in neural network pruning").

Controls for honest comparisons (`control=`): `"reinit"` trains the masks of a reference
search from a fresh random initialisation each round; `"random_mask"` trains random masks
with the same per-layer counts.

Round 0 trains the dense model; round r trains at level r. With a `directory`, the state is
written there after every round (one file at a time, each written to a temporary file and
then renamed), and a search started again on the same directory continues after the last
finished round; with the same seed the result equals an uninterrupted run.
"""

from tfprune.lottery.search import CONTROLS, REWINDS, LotterySearch, find_ticket
from tfprune.lottery.ticket import Ticket

__all__ = ["CONTROLS", "REWINDS", "LotterySearch", "Ticket", "find_ticket"]
