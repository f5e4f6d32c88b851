"""``python -m unet_lowered`` runs the ``unet`` command."""

from unet_lowered.cli import main

if __name__ == "__main__":
    main()
