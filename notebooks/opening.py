"""The cells every notebook opens with after its title: what to do first, Google Drive, install, login.

build.py puts them in each notebook (after the parameters and helpers cells); `{extra}` and `{repository}` in INSTALL
are filled in there.
"""

BEFORE_YOU_RUN = """\
## Before you run it

1. **GPU**: *Runtime → Change runtime type → T4 GPU*.
2. **posttrain**: on your computer, in a clone of the repository, `make wheel` writes
   `dist/posttrain-VERSION-py3-none-any.whl`. Put that file in a folder `posttrain` of your Google Drive (or drag it
   into Colab's file panel, `/content`): the install cell finds it. Or set `POSTTRAIN_GIT` in the install cell to a
   git URL to install from. Once posttrain is on PyPI, skip this step: the cell installs it from there.
3. **Hugging Face token**: `meta-llama/Llama-2-7b-hf` is gated. Accept Meta's licence on its page on
   huggingface.co, then add a Colab secret named `HF_TOKEN` (the key icon in the left bar) holding a token that can
   read it, with access for this notebook. Without the secret, the login cell waits until you paste a token. To
   skip both, set `MODEL` to the ungated copy `NousResearch/Llama-2-7b-hf` in the login cell.
4. ***Runtime → Run all.*** The Drive cell asks for access to your Google Drive: the run folders are written there
   (`MyDrive/posttrain/runs`), so a disconnect loses nothing. After one, reconnect and *Run all* again: a finished
   run is kept and an interrupted one continues from its last checkpoint (`--resume`).

Every training command is a shipped `llama2-7b/*-qlora-t4` recipe, sized down by `--set` to fit one free session
(drop those `--set`s for the full run: `posttrain plan` prints its time too). Setting `TINY = True` in the next cell
runs the same notebook with `tiny-llama2`, a random 2-layer Llama, for a few steps on a CPU: that is how the test
suite checks it. Its replies are noise."""


DRIVE_MD = """\
## Google Drive first

Colab's own disk is wiped when the session ends or disconnects. With `KEEP_ON_DRIVE` (the default), the run folders
go to `MyDrive/posttrain/runs` on your Google Drive: the next notebooks find them there, and after a disconnect
*Run all* continues an interrupted run from its last checkpoint. The cell asks once for access to your Drive. A 7B
run folder takes a few hundred MB: the adapter, and at most two checkpoints of adapter and optimizer."""

DRIVE = """
KEEP_ON_DRIVE = True  # False: run folders on Colab's disk, lost when the session ends
RUNS_DIR = Path("runs")
if KEEP_ON_DRIVE and IN_COLAB and not TINY:
    from google.colab import drive

    drive.mount("/content/drive")
    RUNS_DIR = Path("/content/drive/MyDrive/posttrain/runs")
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
print(f"run folders go to {RUNS_DIR.resolve()}")
"""

INSTALL_MD = """\
## Install

Colab already has a CUDA build of PyTorch; pip keeps it and installs posttrain with the Hugging Face stack
(transformers, TRL, PEFT, bitsandbytes, datasets, accelerate). The cell installs the newest `posttrain-*.whl` it
finds in `/content`, `MyDrive` or `MyDrive/posttrain` (see *Before you run it*), else `POSTTRAIN_GIT` when you set
it, else posttrain from PyPI. `posttrain env` then shows the GPU and the precision posttrain will use: fp16 on a
T4, which has no bf16."""

INSTALL = """
POSTTRAIN_GIT = ""  # or a git URL to install from, e.g. "git+{repository}"
DRIVE_FOLDER = Path("/content/drive/MyDrive")
WHEEL_FOLDERS = [Path.cwd(), Path("/content"), DRIVE_FOLDER, DRIVE_FOLDER / "posttrain"]  # where a wheel is looked for
if not TINY:
    wheels = [wheel for folder in WHEEL_FOLDERS for wheel in folder.glob("posttrain-*.whl")]
    if wheels:
        source = shlex.quote(f"{{max(wheels, key=os.path.getmtime)}}{extra}")  # the newest one
    elif POSTTRAIN_GIT:
        source = shlex.quote(f"posttrain{extra} @ {{POSTTRAIN_GIT}}")
    else:
        print("no posttrain-*.whl found and POSTTRAIN_GIT not set: installing posttrain from PyPI")
        source = shlex.quote("posttrain{extra}")
    sh(f"{{sys.executable}} -m pip install --quiet {{source}}")
sh("posttrain env")
"""

LOGIN_MD = """\
## Model and Hugging Face login

`meta-llama/Llama-2-7b-hf` is gated. The cell takes the token from the Colab secret `HF_TOKEN`, else from an
earlier login, else it asks for one and waits until you paste it: *Run all* stops there. It then checks that the
token can read the model, so that a licence not yet accepted stops the notebook here rather than in a run. To skip
the login, set `MODEL` to the ungated copy `NousResearch/Llama-2-7b-hf` (the same weights); any other
Llama-architecture model works too. `RUNS` is where the run folders go (on Drive, see above)."""

LOGIN = """
MODEL = "meta-llama/Llama-2-7b-hf"  # ungated alternative: "NousResearch/Llama-2-7b-hf"
RUNS = f"{RUNS_DIR}/llama2-7b"  # run folders: llama2-7b-sft, llama2-7b-reward, ...


def hugging_face_token() -> str:
    \"\"\"The Colab secret HF_TOKEN, else a token saved by an earlier login, else one typed in (the prompt waits).\"\"\"
    import huggingface_hub

    token = None
    if IN_COLAB:
        from google.colab import userdata

        try:
            token = userdata.get("HF_TOKEN")  # Colab asks once whether this notebook may read the secret
        except Exception as error:  # no such secret, access refused, or the dialog left unanswered
            print(f"no Colab secret HF_TOKEN that this notebook may read ({type(error).__name__})")
    token = token or huggingface_hub.get_token()
    if not token:
        from getpass import getpass

        token = getpass("Hugging Face token (read access, from huggingface.co/settings/tokens): ").strip()
        huggingface_hub.login(token=token)  # checks the token and saves it for this session
    return token


if TINY:
    MODEL, RUNS = "tiny-llama2", "runs/tiny"
elif MODEL.startswith("meta-llama/"):
    os.environ["HF_TOKEN"] = hugging_face_token()  # the posttrain commands run in processes of their own
    from huggingface_hub import HfApi

    HfApi().auth_check(MODEL)  # raises GatedRepoError, saying why, when the token cannot read the model
"""
