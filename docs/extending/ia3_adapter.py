"""An adapter kind in one file: peft's IA3 (learned per-channel rescaling of the adapted layers'
activations, Liu et al. 2022) as `adapter="ia3"`, one for both modalities like the shared LoRA.

peft injects and saves it; the kind only tells the workbench how to find, save and load it.
"""

from peft import IA3Config, inject_adapter_in_model
from peft.tuners.ia3 import IA3Layer

from sda_lib.method import adapters, moda


class IA3(adapters.AdapterKind):
    def attach(self, model, settings):
        inject_adapter_in_model(IA3Config(target_modules=settings.pattern, feedforward_modules=[]), model)
        return moda.adapter_report(model, [n for n, m in model.named_modules() if isinstance(m, IA3Layer)])

    def owns(self, model):
        return any(isinstance(m, IA3Layer) for m in model.modules())

    def save(self, model, folder, backbone_id):
        return adapters.save_peft(model, folder, backbone_id)

    def saved_in(self, folder):
        return adapters.peft_type(folder) == "IA3"

    def load(self, model, folder, backbone_id):
        adapters.load_peft(model, folder, backbone_id)

    def weights_file(self, folder):
        return folder / adapters.PEFT_WEIGHTS


adapters.KINDS.register("ia3", IA3())
