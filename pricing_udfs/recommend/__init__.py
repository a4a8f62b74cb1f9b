"""The recommendation path's parts that run inside the job: candidate generation from behaviour
(``candidates``), ranking of priced candidates (``ranking``) and the prices a recommendation promised
(``honoured``). A recommendation is many pricing decisions ranked: the prices come from the pricing
path's policy, never from a second pricing engine."""
