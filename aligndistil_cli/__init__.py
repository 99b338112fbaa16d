"""aligndistil: AlignDistil (Zhang et al., ACL 2025) as a command-line toolkit."""

__version__ = "0.1.0"
