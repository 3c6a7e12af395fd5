r"""PRISM_BERT4Rec: RecBole's BERT4Rec with the PRISM module plugged in, without label leakage.

BERT4Rec is a masked-item model: in training some items of the input are replaced by the mask
token (id ``n_items``) and predicted; at prediction time a mask token is appended after the
last item.  The features of a masked position must not reveal the hidden item, so

* the mask token has its own row in the feature tables, all zeros and flagged missing: a masked
  position carries no modality vector;
* the pooling (modalities and ID summary) skips masked and padding positions, so neither the
  experts nor the gate see the hidden items;
* masked positions still receive the user's fused vector z (it is computed from the visible
  items only), so the position that is predicted can use it directly.

Defaults: RecBole's ``BERT4Rec.yaml`` (``transform: mask_itemseq``), then PRISM's.
"""
from recbole.model.sequential_recommender.bert4rec import BERT4Rec

from prism_recbole.model.plugin import PRISMPlugin


class PRISM_BERT4Rec(PRISMPlugin, BERT4Rec):
    backbone_name = "BERT4Rec"

    def prism_pool_mask(self, item_seq, item_seq_len=None):
        return super().prism_pool_mask(item_seq, item_seq_len) & (item_seq != self.mask_token)

    def prism_add_mask(self, item_seq, item_seq_len=None):
        return self.prism_pool_mask(item_seq, item_seq_len) | (item_seq == self.mask_token)
