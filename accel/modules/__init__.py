"""Drop-in torch modules, one file per `torchrec.modules` file."""
