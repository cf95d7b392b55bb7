"""The admin command line: `python -m source.cli <command> ...`.

Each command group lives in its own module and registers its sub-commands on the shared parser:
`plan` (what a payload will do, no GPU) and the queue commands (`enqueue`, `list`, `show`, ...).
"""
