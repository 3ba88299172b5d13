"""The import path of the search-space classes in version 0.1, kept because Ray pickled
them into every experiment of that version (its tuner.pkl names
`nlb_ndt.search_space.Dimension`); they live in `nlb_ndt.config.search_space`."""

from nlb_ndt.config.search_space import Dimension

__all__ = ["Dimension"]
