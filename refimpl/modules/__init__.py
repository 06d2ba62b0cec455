"""One file per `torchrec.modules` file, each exposing the page's classes and functions."""
