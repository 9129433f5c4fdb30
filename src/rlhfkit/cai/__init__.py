"""Constitutional AI: constitutions, chat backends, critique and revision, the AI judge."""
