"""Stage: the gold-standard refinement loop (half sets, network proposals or global search,
local refinement, half maps, FSC -> next round)."""
