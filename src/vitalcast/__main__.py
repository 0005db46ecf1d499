"""``python -m vitalcast``: the same command as the ``vitalcast`` script."""

from vitalcast.cli import main

if __name__ == "__main__":
    main()
