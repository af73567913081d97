"""torchrun entry point for tests/test_distributed.py (and, without torchrun, tests/test_trainer.py):
`bertmath pretrain` with a fault injected in one process.

    FAULT_RANK=1 FAULT_STEP=8 FAULT_KIND=kill  torchrun ... tests/fault_injection.py pretrain CONFIG ...

kill: the process SIGKILLs itself before optimizer step FAULT_STEP + 1, as the OOM killer or a lost node would;
raise: it raises RuntimeError there, as a bug would; hang: it sleeps there for good, as a deadlock would;
pause: it creates the file FAULT_GATE.reached there and waits until a test creates FAULT_GATE, then goes on
(a run held mid-way, for as long as the test needs, with no timing guess).
Every other process runs bertmath unchanged.
"""

import os
import signal
import sys
import time

from bertmath import cli, trainer


def main() -> int:
    rank, step, kind = int(os.environ["FAULT_RANK"]), int(os.environ["FAULT_STEP"]), os.environ["FAULT_KIND"]
    train_step = trainer.Trainer._train_step

    def faulty_train_step(self):
        if self.dist.rank == rank and self.state.step == step:
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "hang":
                while True:
                    time.sleep(60)
            if kind == "pause":
                gate = os.environ["FAULT_GATE"]
                open(gate + ".reached", "w").close()
                while not os.path.exists(gate):
                    time.sleep(0.02)
                return train_step(self)
            raise RuntimeError(f"injected fault in rank {rank} before step {step + 1}")
        return train_step(self)

    trainer.Trainer._train_step = faulty_train_step
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
