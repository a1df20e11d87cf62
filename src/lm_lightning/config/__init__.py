"""The config layer: where the YAML lives (:mod:`.location`), the value specs and the typed schema
every composed config is checked against (:mod:`.spec`, :mod:`.schema`), the recipes' resolvers
(:mod:`.recipes`), and the resolution steps from a composed config to a run's values: resolve,
a pure check, the derived model shape (:mod:`.resolve`)."""
