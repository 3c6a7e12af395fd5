"""``create_dataset`` that picks RecBole's dataset class and adds modality tables to it."""
import importlib

from recbole.utils import ModelType

_TYPE2CLASS = {
    ModelType.GENERAL: "Dataset",
    ModelType.SEQUENTIAL: "SequentialDataset",
    ModelType.CONTEXT: "Dataset",
    ModelType.KNOWLEDGE: "KnowledgeBasedDataset",
    ModelType.TRADITIONAL: "Dataset",
    ModelType.DECISIONTREE: "Dataset",
}


def create_dataset(config):
    """Like :func:`recbole.data.create_dataset`, with modality tables when ``modalities`` is set.

    RecBole's pickled-dataset cache (``save_dataset`` / ``dataset_save_path``) is not read:
    it is loaded with ``pickle`` and is not checked against the atomic files.  The atomic
    files are parsed every time.
    """
    from prism_recbole.data.dataset import PrismDataset, PrismSequentialDataset
    from prism_recbole.data.positions import train_positions_option, with_all_positions

    module = importlib.import_module("recbole.data.dataset")
    name = config["model"] + "Dataset"
    if hasattr(module, name):
        dataset_class = getattr(module, name)
    else:
        dataset_class = getattr(module, _TYPE2CLASS[config["MODEL_TYPE"]])
    if config["modalities"]:
        upgrades = {
            module.SequentialDataset: PrismSequentialDataset,
            module.Dataset: PrismDataset,
        }
        if dataset_class not in upgrades:
            raise ValueError(
                f"option 'modalities' is not supported with {dataset_class.__name__} "
                f"(model {config['model']}); remove it for this model"
            )
        dataset_class = upgrades[dataset_class]
    if train_positions_option(config) == "all":
        dataset_class = with_all_positions(dataset_class)
    return dataset_class(config)
