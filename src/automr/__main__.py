"""``python -m automr`` (so ``torchrun --nproc-per-node N -m automr ...`` runs the CLI)."""

from automr.cli.main import app

if __name__ == "__main__":
    app(prog_name="automr")
