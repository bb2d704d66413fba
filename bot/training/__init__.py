"""Training control: jobs in the ledger and where they run, one retraining job start to finish,
the evaluation gate, the adapters (promote, roll back, follow the live one) and the admins'
chat commands. The heavy lifting (dataset, LoRA training, GGUF) is finetune/'s."""
