"""Config schema (one dataclass per group) and the quantities derived from a composed config."""
