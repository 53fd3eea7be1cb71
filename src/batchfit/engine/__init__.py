"""The pure functional core: state, the one step, its compiled drivers, the host loop."""
