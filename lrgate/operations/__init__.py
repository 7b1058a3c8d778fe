"""Operations: what runs around training without touching it: the gate policy and guard, promotion, the run
report, the reviewer's CLI side, the fleet's report, work-pool templates and the temporary server of
``lrgate run``. It never imports fastai or torch."""
