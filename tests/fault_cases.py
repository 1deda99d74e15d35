"""The bad inputs of the fault suite (``tests/test_faults.py``), one tuple each: arguments and a piece of the one-line
error they must get. ``docs/reliability.md`` lists the same cases with what each gets."""

TRAIN_BAD_VALUES = [
    (["trainer.epochs=abc"], "trainer.epochs='abc' is invalid"),
    (["seed=abc"], "seed='abc' is invalid"),
    (["seed=-1"], "seed=-1 is invalid"),
    (["optimizer.lr=abc"], "optimizer.lr='abc' is invalid"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is invalid"),
    (["optimizer.lr=nan"], "optimizer.lr=nan is invalid"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1 is invalid"),
    (["trainer.grad_clip=abc"], "trainer.grad_clip='abc' is invalid"),
    (["trainer.grad_clip=0"], "trainer.grad_clip=0 is invalid"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 is invalid"),
    (["trainer.val_every_n_epochs=0"], "trainer.val_every_n_epochs=0 is invalid"),
    (["trainer.val_every_n_steps=0"], "trainer.val_every_n_steps=0 is invalid"),
    (["trainer.grad_accum=0"], "trainer.grad_accum=0 is invalid"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 is invalid"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5 is invalid"),
    (["trainer.max_steps=2.5"], "trainer.max_steps=2.5 is invalid"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0 is invalid"),
    (["trainer.ema_decay=abc"], "trainer.ema_decay='abc' is invalid"),
    (["trainer.precision=16"], "trainer.precision=16 is invalid"),
    (["trainer.accelerator=tpu"], "trainer.accelerator='tpu' is invalid"),
    (["trainer.sync_bn=maybe"], "trainer.sync_bn='maybe' is invalid"),
    (["trainer.progress_bar=2"], "trainer.progress_bar=2 is invalid"),
    (["trainer.monitor_mode=up"], "trainer.monitor_mode='up' is invalid"),
    (["trainer.compile_backend=fast"], "trainer.compile_backend='fast' is invalid"),
    (["dataset.batch_size=0"], "dataset.batch_size=0 is invalid"),
    (["dataset.num_workers=-1"], "dataset.num_workers=-1 is invalid"),
    (["scheduler.warmup=-1"], "scheduler.warmup=-1 is invalid"),
    (["model.T=0"], "model.T=0 is invalid"),
    (["logger=wandb", "logger.mode=bogus"], "logger.mode='bogus' is invalid"),
    (["trainer.resume=/nonexistent/last.pt"], "does not exist"),
    (["trainer.resume_allow_changes=yes"], "trainer.resume_allow_changes='yes' is invalid"),
]

EVAL_BAD_ARGUMENTS = [  # {ckpt} is the path of a finished tiny run's best.pt
    ([], "eval.py needs ckpt=PATH"),
    (["ckpt=/nonexistent.pt"], "does not exist"),
    (["ckpt={ckpt}", "use_emma=true"], "did you mean use_ema"),
    (["ckpt={ckpt}", "trainer.precison=64"], "did you mean trainer.precision"),
    (["ckpt={ckpt}", "dataset.bach_size=8"], "did you mean dataset.batch_size"),
    (["ckpt={ckpt}", "model=sparse_mlp_tiny"], "takes the model from the checkpoint"),
    (["ckpt={ckpt}", "dataset=mnist"], "takes the dataset from the checkpoint"),
    (["ckpt={ckpt}", "use_ema=true"], "no EMA weights"),
    (["ckpt={ckpt}", "use_ema=maybe"], "use_ema='maybe' is invalid"),
    (["ckpt={ckpt}", "mfi_compare_batches=-1"], "mfi_compare_batches=-1 is invalid"),
    (["ckpt={ckpt}", "energy.convention=bogus"], "energy.convention='bogus' is invalid"),
    (["ckpt={ckpt}", "trainer.epochs=abc"], "trainer.epochs='abc' is invalid"),
]

# crafted checkpoints: where the dangerous target or resolver goes, and what the refusal names
DANGEROUS_CONFIGS = [
    ("dataset", {"_target_": "numpy.savetxt", "fname": "{victim}", "X": [[1.0]]}, "numpy.savetxt"),
    ("dataset", {"_target_": "builtins.open", "file": "{victim}", "mode": "w"}, "builtins.open"),
    ("model", {"_target_": "shutil.copyfile", "src": "/etc/hostname", "dst": "{victim}"}, "shutil.copyfile"),
    ("model", {"_target_": "os.symlink", "src": "/etc/hostname", "dst": "{victim}"}, "os.symlink"),
    ("dataset", {"_target_": "snn_engine.data.ShapesData",
                 "extra": {"_target_": "torch.save", "obj": 1, "f": "{victim}"}}, "torch.save"),
    ("neuron", {"_target_": "snn_engine.run.write_json", "path": "{victim}", "values": {}}, "snn_engine.run.write_json"),
    ("dataset", {"_target_": "snn_engine.data.ShapesData", "name": "${oc.env:HOME}"}, "HOME"),
    ("dataset", {"_target_": "snn_engine.data.ShapesData", "name": "${oc.create:{a: 1}}"}, "oc.create"),
]
