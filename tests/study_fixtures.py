"""The tiny study config shared by the Optuna tests (edsr-tiny, 6-step searches)."""

TINY_STUDY = {
    "name": "tiny",
    "seed": 0,
    "task": {"name": "sr", "scale": 2},
    "data": {"images": ["astronaut", "chelsea", "coffee", "camera"], "val_fraction": 0.5,
             "patch_size": 24, "batch_size": 2},
    "space": {"backbone": {"preset": "edsr-tiny"}, "keys": [0, 2, 4]},
    "search": {"steps": 6, "warmup_steps": 2, "lr_size": [12, 16], "checkpoint_every": 2,
               "log_every": 2, "val_images": 2},
    "hpo": {"trials": 2, "population_size": 2,
            "params": {"search.penalty.lambda": {"type": "float", "low": 0.01, "high": 2.0,
                                                 "log": True},
                       "search.alpha_lr": {"type": "float", "low": 1e-3, "high": 1e-1,
                                           "log": True}}},
}

