"""The stack read once, errors, participants, files and process helpers every part shares."""
