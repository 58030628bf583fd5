"""Loss functions (pure): JCL / InfoNCE (stage 1), consistency and supervised (stage 2); may
import only torch and task."""

from s2mts2.losses.consistency import consistency_loss
from s2mts2.losses.jcl import infonce_loss, jcl_loss
from s2mts2.losses.supervised import supervised_loss

__all__ = ["consistency_loss", "infonce_loss", "jcl_loss", "supervised_loss"]
