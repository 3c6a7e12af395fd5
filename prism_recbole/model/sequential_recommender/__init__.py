from prism_recbole.model.sequential_recommender.mmsr import MMSR
from prism_recbole.model.sequential_recommender.prism_bert4rec import PRISM_BERT4Rec
from prism_recbole.model.sequential_recommender.prism_caser import PRISM_Caser
from prism_recbole.model.sequential_recommender.prism_gru4rec import PRISM_GRU4Rec
from prism_recbole.model.sequential_recommender.prism_narm import PRISM_NARM
from prism_recbole.model.sequential_recommender.prism_sasrec import PRISM_SASRec
from prism_recbole.model.sequential_recommender.prism_stamp import PRISM_STAMP
from prism_recbole.model.sequential_recommender.prism_stosa import PRISM_STOSA
from prism_recbole.model.sequential_recommender.stosa import STOSA

__all__ = ["MMSR", "PRISM_BERT4Rec", "PRISM_Caser", "PRISM_GRU4Rec", "PRISM_NARM", "PRISM_SASRec", "PRISM_STAMP", "PRISM_STOSA", "STOSA"]
