"""The aggregator VM in the chosen public cloud (one module per cloud), its firewall and bootstrap."""
