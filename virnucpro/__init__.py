"""VirNucPro-FastESM library: one module per concern.

=================  ==========================================================
``errors``         the typed errors the command-line scripts turn into exit codes
``files``          text and gzip opening, atomic writes, file hashes
``fasta``          FASTA reading (validated, streamed) and writing, FASTA splitting
``fastq``          FASTQ reading, and ``read_sequences`` (FASTA or FASTQ, detected)
``ids``            the ``{record}_chunk_{k}`` / ``F1..R3`` identifier format
``frames``         chunking, six-frame translation, stop-free frame selection
``models``         device choice, precision, language-model loading and its workarounds
``hfload``         loading under transformers 4 and 5; what a failed load means
``provenance``     the resolved revision of the language-model weights a run used
``tokens``         per-shard token arrays, duplicate sequences kept once
``embed``          token-budget batching, protein and DNA embeddings
``features``       the feature-file formats (DNABERT-S, protein, merged), their checksums
``extraction``     feature files made with the models; the merge of DNA and protein features
``extract``        features_extract.py's run: training splits selected, merged files made or kept
``classifier``     the MLP classifier and its checkpoints
``legacy``         converting original VirNucPro whole-model pickles (safely)
``evaluation``     metrics of classifiers against labels, agreement, curves
``outputs``        every output file name and column list shared by scripts
``cli``            argument parsing, logging and the shared ``main`` wrapper
``defaults``       model ids, batch sizes, labels
``shards``         prediction input grouped into shards, chunked and framed
``scoring``        the models of a prediction run, loaded once; scoring a shard
``results``        per-shard result files; the frame -> chunk -> sequence roll-up
``runstate``       a prediction OUTDIR: manifest, resume, ``--force``, final merge
``training_data``  the training set: merged files read, checked, split
``training``       the training loop: batches, metrics, early stopping
``shardindex``     prediction's one input pass and shard index; reading any shard
``dupcheck``       duplicate record ids found in bounded memory
``runlock``        the exclusive lock of a prediction OUTDIR
``distributed``    torchrun: process group, ranks, errors shared by all ranks, turns
=================  ==========================================================

Importing the package (or ``errors``, ``files``, ``fasta``, ``fastq``, ``ids``, ``frames``,
``outputs``, ``cli``, ``distributed``, ``extract``) imports no torch.
"""

__version__ = "0.2.0"
