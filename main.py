"""3DGS trainer: python main.py {fit,validate,test,predict} --config configs/... --data.path DATA -n NAME"""

from internal.cli import main

if __name__ == "__main__":
    main()
