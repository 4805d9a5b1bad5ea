"""The two jobs, siblings: `train` (data -> target -> IPG datasets -> detector) and `repair`
(attribution -> plan -> repair methods -> evaluation), each a short composition of stage
functions (`stages`). Entry points (`train.py`, `repair.py`) call `run_train` / `run_repair`."""
