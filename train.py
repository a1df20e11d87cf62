from lm_lightning.train import main

main()
