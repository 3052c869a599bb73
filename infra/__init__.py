"""The aggregator VM in the chosen public cloud (a module per cloud), firewall and bootstrap."""
