"""A tiny TFDS text dataset in array_record files, built locally once per test session."""

import pytest

TFDS_DATASET = "seqjax_tiny_text"
TFDS_TRAIN_RECORDS = [f"train record {i}: " + "abcdefghij"[: i % 10 + 1] * 3 for i in range(12)]
TFDS_TEST_RECORDS = ["the first test record", "a second one", "ünïcödé bytes", "short"]


@pytest.fixture(scope="session")
def tfds_dataset(tmp_path_factory) -> dict:
    """The task options that read the dataset (``dataset``, ``data_dir``)."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class SeqjaxTinyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(TFDS_TRAIN_RECORDS),
                "test": self._generate_examples(TFDS_TEST_RECORDS),
            }

        def _generate_examples(self, records):
            for index, text in enumerate(records):
                yield index, {"text": text}

    data_dir = tmp_path_factory.mktemp("tfds")
    builder = SeqjaxTinyText(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return {"dataset": TFDS_DATASET, "data_dir": str(data_dir)}
