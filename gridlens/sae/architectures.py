"""The SAE architecture names, in a module without torch so that `gridlens sae ... --help` can
list them without importing it (gridlens.sae.model builds them)."""

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "gated")
