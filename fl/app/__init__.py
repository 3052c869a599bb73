"""The Flower app: exactly what ships to every participant in the FAB."""
