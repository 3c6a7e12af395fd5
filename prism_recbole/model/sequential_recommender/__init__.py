from prism_recbole.model.sequential_recommender.prism_sasrec import PRISM_SASRec

__all__ = ["PRISM_SASRec"]
