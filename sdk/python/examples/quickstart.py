# %% [markdown]
# # execgate from Python
#
# A Jupyter-style tour (cells are marked `# %%`: VS Code, PyCharm and
# Jupytext open it as a notebook; `python quickstart.py` runs it whole).
# It needs a gateway and a token: run `execgate up` and paste the two
# `export` lines it prints (EXECGATE_URL, EXECGATE_TOKEN).

# %%
from execgate import Chunk, Client, LostOutput

client = Client.from_env()
for env in client.envs():
    custom = [t.name for t in env.custom_tools]
    print(f"{env.name:10} default={env.is_default} last_seen={env.last_seen} custom={custom}")

# %% Run a command: a non-zero exit is a result, not an exception.
env = client.default_env()
r = env.shell("uname -s; echo oops >&2; exit 3")
print(repr(r.stdout), repr(r.stderr), r.exit_code, r.timed_out)

# %% Files: write, read, patch.
env.write_file("execgate-demo/hello.txt", "hello\n")
env.apply_patch(
    "*** Begin Patch\n"
    "*** Update File: execgate-demo/hello.txt\n"
    "@@\n"
    "-hello\n"
    "+hello, world\n"
    "*** End Patch"
)
print(env.read_file("execgate-demo/hello.txt").decode())

# %% A long-running process: stdin, EOF, streamed output.
with env.spawn(["sh", "-c", "tr a-z A-Z; echo bye >&2"]) as p:
    p.write("hello from python\n")
    p.close_stdin()
    for item in p.output():
        if isinstance(item, LostOutput):
            print(f"[{item.bytes} bytes of output were lost]")
        else:
            assert isinstance(item, Chunk)
            print(f"{item.stream}: {item.text}", end="")
    print("exit code:", p.wait(10))

# %% Clean up.
env.shell("rm -rf execgate-demo", check=True)
client.close()
print("done")
