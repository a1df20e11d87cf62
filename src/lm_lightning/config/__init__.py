"""The config layer: where the YAML lives (:mod:`.location`) and the typed schema every composed
config is checked against once, before anything is built or written (:mod:`.schema`)."""
