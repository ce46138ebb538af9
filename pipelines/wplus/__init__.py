"""The W+ adapter path: a face -> FFHQ alignment -> e4e W+ latent (18x512) ->
attribute edits -> 4 tokens (`WProjModel`) -> residual cross-attention in a
Stable Diffusion UNet (SD1.5 published weights; SDXL by training).

Modules: `align` (insightface 5-point kps -> FFHQ crop), `parsing` (PSFRGAN's
ParseNet and the whitening of background and clothes before e4e), `e4e` (the
Encoder4Editing network in the published state-dict layout), `edits` (direction
vectors loaded as data), `adapter` (install/remove the adapter on a UNet),
`train` (train an adapter for a new base). Nothing here runs at import."""
