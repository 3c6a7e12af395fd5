"""``train_positions: all``: each user's training history once, in windows, every target once.

RecBole's sequential datasets turn a user's history s_1 .. s_n into one row per prefix
(``item_id_list`` = the up to ``MAX_ITEM_LIST_LENGTH`` (M) items before the target, right-padded,
``item_id`` = the target) and then split leave-one-out: the last row is the test row, the one
before it the validation row, the K = n - 3 rows before those are the training rows (targets
s_2 .. s_{n-2}).  A model that scores every position of its input learns from a row all the
targets the row's list holds, so training on every prefix row would count early targets again
and again.

With ``train_positions: all`` the training split keeps, per user, the rows k (0 .. K-1, in time
order) with ``(K - 1 - k) % M == 0``: the last training row and every M-th row before it.  The
row ending at target t has the M items before t in its list, so it covers the targets
(t - M, t]; the kept rows cover every training target exactly once (a user with K <= M keeps
one row).  The targets at the positions of a kept row are the next items
(``item_id_list[j + 1]`` for position j, ``item_id`` for the last real position).  Validation
and test rows are untouched, so evaluation is RecBole's leave-one-out full ranking as before,
and no validation or test target is ever a training target (they come after every training
row).  What differs from the prefix rows: a position j of a long user's window sees j + 1 items
of context, not up to M (as in the original SASRec's and the PRISM authors' training).

``position_stride: S`` (1 <= S <= M; default M) keeps every S-th row instead, and the model
scores only the last S positions of each window (every position of a window no longer than S:
the user's first): each training target is still scored exactly once, with at least M - S items
of context once the history is longer than M, at the cost of about M / S times the windows.
Row k's list holds min(k + 1, M) items; the kept rows are k = K - 1, K - 1 - S, ...; the first
one, k_0 = (K - 1) % S < S, holds at most S items and covers targets 0 .. k_0, and each later
row k covers (k - S, k] with its last S positions.

Masked-item models (RecBole's BERT4Rec, ``transform: mask_itemseq``) read no targets: they mask
items of ``item_id_list`` and predict them.  For them each kept row's list also takes the row's
target (``item_id``) after its last item, dropping the oldest item when the list is full, so a
window holds the up to M items that end with its target: with the default stride the windows
are disjoint and hold every training target once (and the user's first item, which is no
target, when the first window has room for it), the original BERT4Rec's training on whole
sequences.  Only ``item_id_list`` and ``item_length`` change.
"""
import numpy as np
import torch
from recbole.data.dataset import SequentialDataset

TRAIN_POSITIONS = ("last", "all")


def train_positions_option(config):
    value = config["train_positions"] if "train_positions" in config else None
    value = "last" if value is None else str(value).strip().lower()
    if value not in TRAIN_POSITIONS:
        raise ValueError(
            f"option train_positions must be one of {', '.join(TRAIN_POSITIONS)}, "
            f"got {config['train_positions']!r}"
        )
    return value


def position_stride_option(config):
    """``position_stride`` S (1 .. MAX_ITEM_LIST_LENGTH); ~ means MAX_ITEM_LIST_LENGTH."""
    max_len = int(config["MAX_ITEM_LIST_LENGTH"])
    value = config["position_stride"] if "position_stride" in config else None
    if value is None:
        return max_len
    try:
        stride = int(value)
    except (TypeError, ValueError):
        stride = 0
    if str(stride) != str(value).strip() or not 1 <= stride <= max_len:
        raise ValueError(
            f"option position_stride must be an integer from 1 to MAX_ITEM_LIST_LENGTH "
            f"({max_len}), or ~; got {value!r}"
        )
    return stride


def rank_in_user(user_ids):
    """For rows of several users, each user's rows in time order (interleaved users are fine):
    ``(rank, size)``, per row, its index k among its user's rows and that user's row count K."""
    user_ids = np.asarray(user_ids)
    order = np.argsort(user_ids, kind="stable")  # users grouped, time order kept inside
    sorted_users = user_ids[order]
    starts = np.r_[0, np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1]
    counts = np.diff(np.r_[starts, len(sorted_users)])
    rank, size = np.empty(len(user_ids), dtype=np.int64), np.empty(len(user_ids), dtype=np.int64)
    rank[order] = np.arange(len(sorted_users)) - np.repeat(starts, counts)
    size[order] = np.repeat(counts, counts)
    return rank, size


def window_rows(user_ids, max_len):
    """Indices of the rows to keep: per user (rows in time order), the last row and every
    ``max_len``-th row (the stride) before it."""
    rank, size = rank_in_user(user_ids)
    return np.flatnonzero((size - 1 - rank) % max_len == 0)  # (K - 1 - k) % M == 0


def masked_item_training(config):
    """Whether the model learns from masked items of its input list (RecBole's BERT4Rec)."""
    return "transform" in config and config["transform"] == "mask_itemseq"


def append_targets(inter, list_field, length_field, target_field):
    """In place: each row's target after the last item of its list (right-padded); a full list
    drops its oldest item first."""
    seq, length, target = inter[list_field], inter[length_field], inter[target_field]
    full = length >= seq.shape[1]
    seq[full] = torch.roll(seq[full], shifts=-1, dims=1)
    position = torch.where(full, length - 1, length)
    seq[torch.arange(len(seq)), position] = target
    inter[length_field] = torch.where(full, length, length + 1)


class AllPositionsDatasetMixin:
    """Placed before a RecBole ``SequentialDataset``: windows in the training split (above)."""

    def build(self):
        datasets = super().build()
        if train_positions_option(self.config) != "all":
            return datasets
        train = datasets[0]
        stride = position_stride_option(self.config)
        keep = window_rows(train.inter_feat[self.uid_field].numpy(), stride)
        inter = train.inter_feat[torch.as_tensor(keep)]
        masked = masked_item_training(self.config)
        if masked:
            append_targets(inter, self.item_id_list_field, self.item_list_length_field, self.iid_field)
        datasets[0] = train.copy(inter)
        self.logger.info(
            f"train_positions: all: {len(keep)} training windows of up to "
            f"{self.max_item_list_len} positions, stride {stride} "
            f"(from {len(train.inter_feat)} prefix rows)"
            + ("; each window ends with its target (masked-item training)" if masked else "")
        )
        return datasets


def with_all_positions(dataset_class):
    """``dataset_class`` with windowed training rows; an error for non-sequential datasets."""
    if not issubclass(dataset_class, SequentialDataset):
        raise ValueError(
            f"train_positions: all needs a sequential dataset; {dataset_class.__name__} is not"
        )
    if issubclass(dataset_class, AllPositionsDatasetMixin):
        return dataset_class
    name = "AllPositions" + dataset_class.__name__
    if name not in globals():  # module-level, so that the class pickles by name
        globals()[name] = type(name, (AllPositionsDatasetMixin, dataset_class),
                               {"__module__": __name__, "__qualname__": name})
    return globals()[name]
