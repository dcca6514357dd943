"""VirNucPro-FastESM library: one module per concern, under the flat scripts that only parse.

The package map (every module and its role) is kept in one place: ``docs/architecture.md``.
Importing the package (or ``errors``, ``files``, ``fasta``, ``fastq``, ``ids``, ``frames``,
``outputs``, ``rundir``, ``options``, ``cli``, ``distributed``, ``predict``, ``evaluate``) imports no torch.
"""

__version__ = "0.2.0"
