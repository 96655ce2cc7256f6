"""The Spark training engine (``ledrec train --engine spark``, the ``spark`` extra).

Pre-training distributed over a Spark cluster or ``local[N]``: events read by Spark
(``events``), item co-occurrence and PMI with Spark shuffles (``pmi``), a randomized SVD
with block products and a tall-skinny QR (``rsvd``), glued into a pre-trainer that hands
its embeddings to the same zero-shot, fine-tuning and artifact code as the numpy engine
(``pretrain``). ``session`` builds the SparkSession.
"""
