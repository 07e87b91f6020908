"""A synthetic catalogue and judgments in the WANDS layout (products, queries, labels TSVs)."""

from __future__ import annotations

import numpy as np

NOUNS = ["bed", "table", "chair", "rug", "lamp", "sofa"]
ADJS = ["king", "oak", "round", "blue", "tufted", "metal", "velvet", "outdoor"]
CLASSES = {
    "bed": "Beds",
    "table": "Coffee Tables",
    "chair": "Dining Chairs",
    "rug": "Area Rugs",
    "lamp": "Table Lamps",
    "sofa": "Sofas",
}
CATS = {
    "bed": "Furniture / Bedroom Furniture / Beds",
    "table": "Furniture / Living Room Furniture / Tables",
    "chair": "Furniture / Kitchen & Dining Furniture / Chairs",
    "rug": "Rugs / Area Rugs",
    "lamp": "Lighting / Lamps / Table Lamps",
    "sofa": "Furniture / Living Room Furniture / Sofas",
}


def write_synthetic(root, products: int = 120, seed: int = 0):
    """A WANDS-layout directory: products named '<adj> <adj> <noun> ...', queries '<adj> <noun>', Exact when
    the product has both words, Partial for the noun only, Irrelevant for the adjective only."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, prods = [], []
    for pid in range(1, products + 1):
        noun = NOUNS[rng.integers(len(NOUNS))]
        adjs = list(rng.choice(ADJS, 2, replace=False))
        prods.append((pid, adjs, noun))
        rows.append(f"{pid}\t{adjs[0]} {adjs[1]} {noun} model {pid}\t{CLASSES[noun]}\t{CATS[noun]}")
    (root / "eval40_products.tsv").write_text(
        "product_id\tproduct_name\tproduct_class\tcategory_hierarchy\n" + "\n".join(rows) + "\n"
    )
    queries, labels = [], []
    qid = 0
    for noun in NOUNS:
        for adj in ADJS[:4]:
            qid += 1
            queries.append(f"{qid}\t{adj} {noun}\t{CLASSES[noun]}")
            for pid, adjs, n in prods:
                if n == noun:
                    labels.append(f"{qid}\t{pid}\t{'Exact' if adj in adjs else 'Partial'}")
                elif adj in adjs:
                    labels.append(f"{qid}\t{pid}\tIrrelevant")
    (root / "eval40_queries.tsv").write_text("query_id\tquery\tquery_class\n" + "\n".join(queries) + "\n")
    (root / "eval40_labels.tsv").write_text("query_id\tproduct_id\tlabel\n" + "\n".join(labels) + "\n")
    return root
