"""Experiments: what the commands run, as library calls with typed settings.

* :mod:`~s3prl_ser.experiments.launch`: one ``run_downstream.py`` run (``RunRequest``, ``launch``);
* :mod:`~s3prl_ser.experiments.cross_validation`: every fold of a corpus, in this process or in workers;
* :mod:`~s3prl_ser.experiments.deployment`: the deployment run (all the data, the folds' schedule);
* :mod:`~s3prl_ser.experiments.table1`: the paper's Table 1 (``Table1Spec``) and the SUPERB view;
* :mod:`~s3prl_ser.experiments.main_job`: the main job on the built-in corpus (``MainJob``).
"""
