from lm_lightning.cli.train import main

if __name__ == "__main__":  # spawned processes (ddp_spawn, spawn-started workers) re-import this file
    main()
