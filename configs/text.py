"""Language modelling on any text file you point at: byte-level from scratch, or fine-tuning
a pretrained Hugging Face checkpoint with its own tokenizer.

    python train.py --config configs/text.py --config.task.path=my_corpus.txt --workdir runs/text
    python eval.py --workdir runs/text --generate "The " --temperature 0.8 --top_k 20

    python train.py --config configs/text.py --config.task.path=my_corpus.txt \
        --config.model.init_from=path/to/checkpoint --workdir runs/finetune

From scratch it reports bits per byte on the held-out tail of the file (the last 5%); on a few
MB of English an LSTM of this size gets well under 2.5 bits per byte in the default 3000
steps. With ``model.init_from`` (a directory with config.json, *.safetensors and
tokenizer.json) the model section becomes the checkpoint's, the tokens its tokenizer's, and
training starts from its weights; the held-out loss is then in nats per token.
"""

import ml_collections

from seqjax.training import mixer_defaults, model_defaults, optimizer_defaults, training_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = dict(name="text", path=None, seq_len=256, test_fraction=0.05, seed=0)
    config.model = model_defaults(
        "lstm", d_model=128, mixers=mixer_defaults(attention=dict(num_heads=4))
    )
    config.model.init_from = None
    config.optimizer = optimizer_defaults(
        learning_rate=2e-3, warmup_steps=200, end_learning_rate_ratio=0.1
    )
    config.training = training_defaults(
        batch_size=32, num_steps=3000, eval_every=1000, keep_checkpoints=3, eval_batch_size=32
    )
    return config
