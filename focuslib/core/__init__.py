"""The FOCUS method, one step per module: config (Tab. 7 presets), targets (I), relevance (II), rois (III grid
geometry), compose (V final input), trace (what a solver returns, the clock), search (Focus: I-V in order)."""
