"""The parity kit: goldens (``*.npz`` / ``*.json``) and the fill rule (`fill_rule`). See README.md."""
