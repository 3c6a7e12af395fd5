"""Top-k recommendations from a saved checkpoint, for known users or a typed item sequence.

    from prism_recbole.recommend import recommend
    for query, items in recommend("saved/PRISM_SASRec-xxx.pth", users=["1", "2"], k=10):
        print(query, [(item, round(score, 3), title) for item, score, title in items])

The checkpoint is loaded once with :func:`prism_recbole.quick_start.load_model` (safe loading,
``torch.load(weights_only=True)``); pass a :class:`~prism_recbole.quick_start.LoadedModel` to
reuse one, or build a :class:`Recommender` to keep the histories and titles between calls.

* **A user** (``users=``): the model's input is the user's *whole* interaction sequence in
  the dataset (train + valid + test interactions, after RecBole's filtering), in time order
  (ties in the order RecBole sorts them), cut to its last ``MAX_ITEM_LIST_LENGTH`` items.
  The result is the next item after everything the dataset knows about the user, not the
  test-split prediction that RecBole's evaluation makes (that one leaves the last item out).
* **Typed items** (``items=``): one sequence of item tokens, oldest first, cut the same way.
  No user is known: the interaction carries user id 0 (the padding user), so models that
  use a user embedding (Caser, PRISM_Caser, ...) score with an untrained user vector.

Scores are the model's own ``full_sort_predict`` on an Interaction shaped like the one
RecBole's full-sort evaluation builds (``item_id_list`` padded to ``MAX_ITEM_LIST_LENGTH``,
``item_length``, ``user_id``), so every sequential model works, including BERT4Rec-style
models that append their mask token inside ``full_sort_predict``; they are raw scores
(logits / dot products), higher is better.  The padding item is never recommended; items of
the history (all of the user's interactions, or all typed items, not only the part the model
sees) are left out unless ``exclude_history=False``.

Titles come from the dataset's ``.item`` file (read directly, whatever ``load_col`` says):
the field ``title_field`` when given, else the first of ``title``, ``movie_title``,
``item_title``, ``name``, ``item_name``, ``book_title`` present as a ``token``/``token_seq``
field, else none (title ``None``).
"""
import os
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np
import torch

TITLE_FIELDS = ("title", "movie_title", "item_title", "name", "item_name", "book_title")
_TEXT_TYPES = ("token", "token_seq")


class UnknownTokenError(ValueError):
    """User or item tokens that the checkpoint's dataset does not know (all of them)."""

    def __init__(self, message, users=(), items=()):
        super().__init__(message)
        self.users = list(users)
        self.items = list(items)


@dataclass(frozen=True)
class Query:
    """One query: a user (``user`` is its token) or a typed item sequence (``user`` is None).

    ``history`` is the item tokens in time order (the user's full sequence, or the typed
    items); the model sees ``model_input``, its last ``max_length`` items.
    """
    user: Optional[str]
    history: tuple
    max_length: int = field(repr=False)

    @property
    def model_input(self):
        return self.history[-self.max_length:]

    def __str__(self):
        if self.user is not None:
            return f"user {self.user}"
        return "items " + " ".join(self.history)


class Recommendation(NamedTuple):
    item: str
    score: float
    title: Optional[str]


class Result(NamedTuple):
    """``(query, items)``: items is a list of ``(item_token, score, title)``, best first."""
    query: Query
    items: list


def _as_tokens(values):
    if values is None:
        return None
    if isinstance(values, (str, bytes, int, np.integer)):
        values = [values]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _quoted(tokens):
    return ", ".join(repr(t) for t in tokens)


def _strip_type(name):
    return name.split(":", 1)[0]


def read_titles(config, item_tokens, title_field=None):
    """``(field name, {item token: title})`` from the dataset's ``.item`` file, or
    ``(None, {})`` when it has no title-like field (``title_field`` given: it must exist)."""
    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    wanted = _strip_type(title_field) if title_field else None
    if not os.path.isfile(path):
        if wanted:
            raise ValueError(f"title_field '{wanted}': the dataset has no item file {path}")
        return None, {}
    sep = config["field_separator"] or "\t"
    seq_sep = config["seq_separator"] or " "
    encoding = config["encoding"] or "utf-8"
    iid_field = config["ITEM_ID_FIELD"]
    with open(path, encoding=encoding, errors="replace") as f:
        header = f.readline().rstrip("\r\n").split(sep)
        names = [_strip_type(h) for h in header]
        types = [h.split(":", 1)[1] if ":" in h else "" for h in header]
        if iid_field not in names:
            if wanted:
                raise ValueError(f"title_field '{wanted}': {path} has no item id column '{iid_field}'")
            return None, {}
        if wanted:
            if wanted not in names:
                raise ValueError(
                    f"title_field '{wanted}' is not a field of {path}; its fields: {', '.join(names)}"
                )
            title_col = names.index(wanted)
        else:
            candidates = [i for i, (n, t) in enumerate(zip(names, types))
                          if n in TITLE_FIELDS and t in _TEXT_TYPES]
            if not candidates:
                return None, {}
            title_col = min(candidates, key=lambda i: TITLE_FIELDS.index(names[i]))
        id_col = names.index(iid_field)
        last = max(id_col, title_col)
        known = set(item_tokens)
        titles = {}
        for line in f:
            cells = line.rstrip("\r\n").split(sep, last + 1)
            if len(cells) <= last:
                continue
            token = cells[id_col]
            if token in known and token not in titles:
                text = cells[title_col].strip()
                if seq_sep != " ":
                    text = " ".join(text.split(seq_sep))
                titles[token] = text or None
    return names[title_col], titles


class Recommender:
    """A loaded model with the users' histories and the item titles, for many queries.

    Args:
        loaded: a checkpoint path or a :class:`~prism_recbole.quick_start.LoadedModel`.
        config_dict: options for :func:`~prism_recbole.quick_start.load_model` (path only).
        title_field: the ``.item`` field to show as title (default: found by name).
        batch_size: queries scored per ``full_sort_predict`` call.
    """

    def __init__(self, loaded, config_dict=None, title_field=None, batch_size=256):
        if not hasattr(loaded, "model"):
            from prism_recbole.quick_start import load_model
            loaded = load_model(loaded, config_dict=config_dict)
        elif config_dict:
            raise ValueError("config_dict applies to a checkpoint path, not to a loaded model")
        self.loaded = loaded
        self.config = loaded.config
        self.model = loaded.model
        self.dataset = loaded.dataset
        self.batch_size = int(batch_size)
        self.uid_field = self.dataset.uid_field
        self.iid_field = self.dataset.iid_field
        self.item_tokens = np.asarray(self.dataset.field2id_token[self.iid_field])
        self.n_items = self.dataset.item_num
        self.sequential = hasattr(self.model, "ITEM_SEQ") and hasattr(self.model, "ITEM_SEQ_LEN")
        self.max_length = int(self.config["MAX_ITEM_LIST_LENGTH"]) if self.sequential else 0
        self._build_histories()
        self.title_field, self.titles = read_titles(self.config, self.item_tokens[1:], title_field)

    # ---- data ------------------------------------------------------------------------------
    def _build_histories(self):
        """Every user's items in time order.  RecBole's SequentialDataset replaces its
        interactions by augmented rows (user, item_id_list, item_length, target item), one per
        interaction but each user's first; the history is the first row's list plus every
        target, in (user, time) order, ties kept in RecBole's stable order."""
        inter = self.dataset.inter_feat
        users = np.asarray(inter[self.uid_field]).astype(np.int64)
        items = np.asarray(inter[self.iid_field]).astype(np.int64)
        time_field = self.config["TIME_FIELD"]
        keys = [np.arange(len(users))]
        if time_field and time_field in inter.columns:
            keys.append(np.asarray(inter[time_field]))
        keys.append(users)
        order = np.lexsort(keys)
        users, items = users[order], items[order]
        seq_field = getattr(self.model, "ITEM_SEQ", None)
        len_field = getattr(self.model, "ITEM_SEQ_LEN", None)
        if seq_field in inter.columns and len_field in inter.columns:
            seqs = np.asarray(inter[seq_field])[order]
            lengths = np.asarray(inter[len_field]).astype(np.int64)[order]
            first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else \
                np.zeros(0, dtype=np.int64)
            head_len = lengths[first]
            head = seqs[first][np.arange(seqs.shape[1]) < head_len[:, None]].astype(np.int64)
            at = np.repeat(first, head_len)  # values inserted at one index keep their order
            items = np.insert(items, at, head)
            users = np.insert(users, at, np.repeat(users[first], head_len))
        self._hist_users = users
        self._hist_items = items

    def history_ids(self, user_id):
        start, end = np.searchsorted(self._hist_users, [user_id, user_id + 1])
        return self._hist_items[start:end]

    def _ids(self, kind, tokens):
        table = self.dataset.field2token_id[self.uid_field if kind == "user" else self.iid_field]
        ids, unknown = [], []
        for token in tokens:
            idx = table.get(token, 0)
            if idx == 0:  # not in the dataset, or the padding token itself
                unknown.append(token)
            ids.append(idx)
        return ids, unknown

    def _unknown_error(self, users=(), items=()):
        parts = []
        name = self.config["dataset"]
        if users:
            parts.append(f"unknown user token{'s' if len(users) > 1 else ''} {_quoted(users)}")
        if items:
            parts.append(f"unknown item token{'s' if len(items) > 1 else ''} {_quoted(items)}")
        return UnknownTokenError(
            f"{' and '.join(parts)}: not in dataset '{name}' of checkpoint "
            f"{self.loaded.checkpoint}", users, items)

    # ---- queries ---------------------------------------------------------------------------
    def recommend(self, users=None, items=None, k=10, exclude_history=True):
        """Top-``k`` items for each user of ``users``, or for the typed sequence ``items``
        (a list of item tokens; a list of such lists gives one query each).

        Returns:
            list[Result]: one ``(query, [(item_token, score, title), ...])`` per query, in
            the order given, best item first.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        users = _as_tokens(users)
        if items is not None and not isinstance(items, (str, bytes, int, np.integer)) \
                and len(items) and all(isinstance(s, (list, tuple)) for s in items):
            sequences = [_as_tokens(s) for s in items]
        else:
            sequences = None if items is None else [_as_tokens(items)]
        if users is not None and sequences is not None:
            raise ValueError("give users or items, not both")
        if not users and not sequences:
            raise ValueError("give at least one user token (users=) or item token (items=)")
        if sequences is not None:
            empty = [i for i, s in enumerate(sequences) if not s]
            if empty:
                raise ValueError("an item sequence is empty: give at least one item token")
            if not self.sequential:
                raise ValueError(
                    f"{self.config['model']} is not a sequential model: it recommends for "
                    "users only, not from typed items")

        if users is not None:
            user_ids, unknown = self._ids("user", users)
            if unknown:
                raise self._unknown_error(users=unknown)
            histories = [self.history_ids(u) for u in user_ids]
            empty = [t for t, h in zip(users, histories) if len(h) == 0]
            if empty:
                raise ValueError(
                    f"user{'s' if len(empty) > 1 else ''} {_quoted(empty)}: no interaction "
                    "sequence in the dataset (a sequential dataset keeps none for a user with "
                    "a single interaction); recommend from typed items instead")
            queries = [Query(t, tuple(str(x) for x in self.item_tokens[h]), self.max_length)
                       for t, h in zip(users, histories)]
        else:
            unknown, user_ids, histories, queries = [], [], [], []
            for seq in sequences:
                ids, bad = self._ids("item", seq)
                unknown.extend(t for t in bad if t not in unknown)
                user_ids.append(0)
                histories.append(np.asarray(ids, dtype=np.int64))
                queries.append(Query(None, tuple(seq), self.max_length))
            if unknown:
                raise self._unknown_error(items=unknown)

        results = []
        for start in range(0, len(queries), self.batch_size):
            stop = start + self.batch_size
            top_scores, top_ids = self._top_k(user_ids[start:stop], histories[start:stop],
                                              k, exclude_history)
            for query, scores, ids in zip(queries[start:stop], top_scores, top_ids):
                recs = [Recommendation(str(self.item_tokens[i]), float(s),
                                       self.titles.get(str(self.item_tokens[i])))
                        for s, i in zip(scores, ids)]
                results.append(Result(query, recs))
        return results

    def interaction(self, user_ids, histories):
        """The Interaction RecBole's full-sort evaluation feeds the model, for these
        users and item-id histories (each cut to its last ``MAX_ITEM_LIST_LENGTH`` items)."""
        from recbole.data.interaction import Interaction

        data = {self.uid_field: torch.as_tensor(np.asarray(user_ids, dtype=np.int64))}
        if self.sequential:
            seq = np.zeros((len(histories), self.max_length), dtype=np.int64)
            lengths = np.zeros(len(histories), dtype=np.int64)
            for row, history in enumerate(histories):
                tail = np.asarray(history, dtype=np.int64)[-self.max_length:]
                seq[row, :len(tail)] = tail
                lengths[row] = len(tail)
            data[self.model.ITEM_SEQ] = torch.as_tensor(seq)
            data[self.model.ITEM_SEQ_LEN] = torch.as_tensor(lengths)
        return Interaction(data)

    def scores(self, user_ids, histories):
        """``full_sort_predict`` for these queries: a ``[len(user_ids), n_items]`` tensor."""
        inter = self.interaction(user_ids, histories).to(self.config["device"])
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                scores = self.model.full_sort_predict(inter)
        finally:
            self.model.train(was_training)
        return scores.reshape(len(user_ids), -1)[:, :self.n_items].float()

    def _top_k(self, user_ids, histories, k, exclude_history):
        scores = self.scores(user_ids, histories)
        banned = torch.zeros_like(scores, dtype=torch.bool)
        banned[:, 0] = True  # the padding item
        if exclude_history:
            for row, history in enumerate(histories):
                banned[row, torch.as_tensor(np.asarray(history, dtype=np.int64),
                                            device=banned.device)] = True
        scores = scores.masked_fill(banned, float("-inf"))
        top_scores, top_ids = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        allowed = ~torch.gather(banned, 1, top_ids)
        top_scores, top_ids, allowed = top_scores.cpu(), top_ids.cpu(), allowed.cpu()
        return ([s[a].tolist() for s, a in zip(top_scores, allowed)],
                [i[a].tolist() for i, a in zip(top_ids, allowed)])


def recommend(checkpoint_or_loaded, users=None, items=None, k=10, exclude_history=True,
              title_field=None, config_dict=None, batch_size=256):
    """Top-``k`` items from a checkpoint (path) or a ``LoadedModel``.

    Args:
        users: user tokens; each user's history is their full interaction sequence in the
            dataset (train + valid + test) in time order, cut to ``MAX_ITEM_LIST_LENGTH``.
        items: a sequence of item tokens, oldest first (or a list of such sequences).
        k: items per query.
        exclude_history: leave out the items of the history (default); the padding item is
            never recommended.
        title_field: ``.item`` field shown as title (default: title, movie_title, name, ...).
        config_dict: options for ``load_model`` when a path is given (e.g. ``data_path``).

    Returns:
        list of ``(query, [(item_token, score, title), ...])``, one per user or sequence.

    Raises:
        UnknownTokenError (a ValueError): tokens that the dataset does not know, all named.
        FileNotFoundError, UnsafeCheckpointError, ValueError: from ``load_model``.
    """
    recommender = Recommender(checkpoint_or_loaded, config_dict=config_dict,
                              title_field=title_field, batch_size=batch_size)
    return recommender.recommend(users=users, items=items, k=k, exclude_history=exclude_history)
