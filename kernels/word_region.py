"""placeholder"""
def word_region_scores_forward(*a): raise NotImplementedError
def word_region_scores_backward(*a): raise NotImplementedError
