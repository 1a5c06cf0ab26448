"""Stage: an initial map from the particles alone (stochastic expectation-maximisation from
random starts), handed to the refinement loop."""
