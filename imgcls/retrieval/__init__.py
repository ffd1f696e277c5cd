"""Recognition and search by embeddings: a trained network as a feature extractor.

embed.py    checkpoint -> L2-normalised pooled pre-logit features, and the model's identity
index.py    nearest neighbours by inner product: exact (numpy) or FAISS (flat, IVF, HNSW)
gallery.py  a folder of enrolled embeddings with labels and paths, tied to one model
recognize.py  open-set recognition (best label or unknown), search, threshold calibration
cluster.py  k-means / HDBSCAN on embeddings, assignments CSV, contact sheets, purity/NMI
commands.py the commands' work (open a gallery with its model, enrol, calibrate, ...) and their text,
            shared by cli.py and serve/retrieval_routes.py
"""
